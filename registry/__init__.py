"""The registry service: OCI Distribution API, REST API, auth and policy, database, gateway."""
