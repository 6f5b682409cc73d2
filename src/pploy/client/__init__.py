"""``pploy client``: pploy's JSON API from a terminal or a CI step, with an API token."""
