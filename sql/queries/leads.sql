-- name: capture_lead
-- Store a public form's lead and queue its events; null when the token was used before (narrow path).
select capture_lead(%(lead_id)s, %(link_id)s, %(nonce)s, %(click_id)s, %(name)s, %(phone)s, %(email)s, %(note)s,
                    %(consent)s, %(event_id)s, %(payload)s) as lead_id;

-- name: list_leads
-- The account's leads newest first with the attribution of the click that showed the form.
select d.id, d.created_at, l.slug as link, d.name, d.phone, d.email, d.note, d.consent, d.click_id,
       c.referrer_host, c.country, c.utm_source, c.utm_medium, c.utm_campaign, c.utm_content, c.utm_term
  from leads d
  join links l on l.id = d.link_id
  left join clicks c on c.click_id = d.click_id and c.link_id = d.link_id
                    and c.clicked_at between d.created_at - interval '1 day' and d.created_at
 where d.created_at >= %(start)s and d.created_at < %(end)s
   and (%(link)s::text is null or l.slug = %(link)s)
   and (%(after_at)s::timestamptz is null or (d.created_at, d.id) < (%(after_at)s, %(after_id)s::uuid))
 order by d.created_at desc, d.id desc
 limit %(limit)s;

-- name: erase_lead
-- Delete one lead of the account; its outbox events (delivered or not) go with it.
delete from leads where id = %(id)s returning id;

-- name: link_leads_count
-- How many leads one link captured in the range.
select count(*) as leads from leads where link_id = %(link_id)s and created_at >= %(start)s and created_at < %(end)s;
