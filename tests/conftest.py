"""Shared fixtures. Real services live in tests/fixtures/ as pytest plugins:

* ``s3_server`` / ``s3_bucket``: moto's standalone S3 server over HTTP on 127.0.0.1;
* ``pg_server`` / ``pg_database``: a throwaway PostgreSQL cluster on a free loopback port;
* ``docker_client`` / ``image_builder``: the local Docker engine and locally built images;
* ``portal_deployment``: a wicked deployment of real-process stand-ins (tests/standins/).
"""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.postgres",
    "tests.fixtures.docker_engine",
    "tests.fixtures.portal_standins",
]
