"""postwarden milter: the milter protocol codec, its asyncio server, and the mail checks."""
