"""Route modules: thin, the logic lives in esc.engine."""
