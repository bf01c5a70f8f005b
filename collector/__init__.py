"""Collect readings from old machines (Modbus, later MQTT) and store them in InfluxDB."""
