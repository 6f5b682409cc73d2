"""gate: the authenticating reverse proxy in front of pploy (or anything else).

Reads typester/gate's config.yml, logs users in with Google, GitHub (incl. Enterprise), any
OpenID provider, or a local dev form, and proxies HTTP and WebSockets without buffering.
"""
