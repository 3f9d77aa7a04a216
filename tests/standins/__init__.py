"""Real-process stand-ins of wicked's components, run in containers (see
tests/fixtures/portal_standins.py). The scripts run inside the ``standin`` image: standard
library only (plus psycopg2 for the Kong Adapter stand-in); nothing here imports test code."""
