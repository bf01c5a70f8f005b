# One image for every aguante command: `docker compose` picks the command per service.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY dashboards ./dashboards
COPY maintenance ./maintenance
COPY simulators ./simulators
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/aguante aguante \
    && mkdir -p /var/lib/aguante/dashboards && chown -R aguante /var/lib/aguante
USER aguante
WORKDIR /var/lib/aguante
ENTRYPOINT ["aguante"]
CMD ["--help"]
