"""Leads: the form page shown before the chat, its submission, and the leads API (list, CSV, erase)."""
