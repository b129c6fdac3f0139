"""Webhooks and WhatsApp Business notifications: their API, event payloads, signing, the outbox deliverer."""
