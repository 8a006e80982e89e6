"""pop-agent: the heartbeat agent of a password-vault POP.

Kept free of side effects so that importing a value type never drags in the runner.
"""
