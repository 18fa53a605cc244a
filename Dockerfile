FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY classifier classifier
COPY providers providers
RUN pip install --no-cache-dir .
EXPOSE 4000
# Several workers share metrics through this directory (prometheus_client multiprocess mode).
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/crossover-metrics
# An unprivileged user (the Helm chart's runAsUser); the gateway writes only under /tmp.
RUN useradd --system --uid 10001 --no-create-home crossover \
    && mkdir -p /tmp/crossover-metrics && chown crossover /tmp/crossover-metrics
USER 10001
ENTRYPOINT ["crossover"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000", "--config", "/etc/crossover/crossover.yaml"]
