"""MONA: monitoring and recovery (KPIs, rules, dynamic mappings, actions)."""
