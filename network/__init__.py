"""A network of plants: each plant shares the hourly rollups it chose to share
(`network.share`), and a network side stores them and shows where capacity is free or short
across the plants (docs/network.md). Imports only `collector`'s config, schema, influxql,
stops, sinks, i18n and mqtt_publish modules."""
