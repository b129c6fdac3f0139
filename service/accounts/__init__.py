"""People: users, memberships, invites, passwords and login sessions."""
