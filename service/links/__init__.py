"""Links: the model, its input schemas, the store (SQL and the link cache), slugs and the links API."""
