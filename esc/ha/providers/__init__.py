"""Node providers, one module per provider: `[ha] provider = "NAME"` loads
`esc.ha.providers.NAME` (see esc.ha.provider)."""
