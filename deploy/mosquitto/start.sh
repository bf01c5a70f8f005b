#!/bin/sh
# Entrada del servicio mosquitto de docker-compose.yml / entry of compose's mosquitto service.
# Makes sure the password file in the data volume holds aguante's own users, with the passwords
# from .env (added or updated; board users added with mosquitto_passwd stay), then runs "$@".
# MOSQUITTO_PASSWORD_FILE moves the file (tests/test_deploy.py runs this script on a temp file).
set -eu
passwd_file=${MOSQUITTO_PASSWORD_FILE:-/mosquitto/data/passwd}
umask 077
[ -e "$passwd_file" ] || : > "$passwd_file"
mosquitto_passwd -b "$passwd_file" aguante-collector "$AGUANTE_MQTT_PASSWORD"
mosquitto_passwd -b "$passwd_file" aguante-maintenance "$AGUANTE_MAINTENANCE_MQTT_PASSWORD"
# The demo's simulated boards (`docker compose --profile demo`): only when a password is given,
# and taken out again when it is not, so a plant's broker never keeps the demo's user.
if [ -n "${AGUANTE_SIMULATOR_MQTT_PASSWORD:-}" ]; then
    mosquitto_passwd -b "$passwd_file" aguante-simulators "$AGUANTE_SIMULATOR_MQTT_PASSWORD"
elif grep -q '^aguante-simulators:' "$passwd_file"; then
    mosquitto_passwd -D "$passwd_file" aguante-simulators
fi
chmod 600 "$passwd_file"
# The broker drops root for `mosquitto`, who must still read the file (and reload it on HUP).
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$passwd_file"
fi
exec "$@"
