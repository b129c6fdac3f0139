-- Back to the key's look-up before the transaction (find_api_key, which 0001 created and this kept).
drop function act_for_api_key(text, bytea, boolean);
