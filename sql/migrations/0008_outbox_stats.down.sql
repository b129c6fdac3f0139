drop function if exists outbox_stats();
