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
RUN mkdir -p /tmp/crossover-metrics
ENTRYPOINT ["crossover"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000", "--config", "/etc/crossover/crossover.yaml"]
