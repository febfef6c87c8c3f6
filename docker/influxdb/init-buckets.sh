#!/bin/sh
# Run once by the influxdb:2 image, on the first start of an empty data volume, after its setup
# (DOCKER_INFLUXDB_INIT_*) made the org and the raw bucket and logged the CLI in with the admin
# token. Adds the aggregates bucket of docker/agent.toml and maps each bucket to a database of the
# same name (DBRP, retention policy autogen), so the dashboards' InfluxQL queries reach them:
# plants (raw readings and the agents' own telemetry), plants_1m (1-minute aggregates).
set -eu
org="$DOCKER_INFLUXDB_INIT_ORG"

map() {  # map <bucket id> <database>
  influx v1 dbrp create --org "$org" --bucket-id "$1" --db "$2" --rp autogen --default
}

map "$DOCKER_INFLUXDB_INIT_BUCKET_ID" "$DOCKER_INFLUXDB_INIT_BUCKET"
aggregates_id="$(influx bucket create --org "$org" --name plants_1m --hide-headers | cut -f 1)"
map "$aggregates_id" plants_1m
