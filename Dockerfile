# wicked-dr sidecar image. Build: docker build -t wicked-dr .
# Runs as uid/gid 888 (wicked's node user), so it may create wicked's global.lock in the
# shared dynamic data volume and restored files keep wicked's ownership.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wicked_dr ./wicked_dr
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd -g 888 wicked && useradd -u 888 -g 888 -M -d /var/lib/wicked-dr wicked \
    && mkdir -p /var/lib/wicked-dr /etc/wicked-dr && chown 888:888 /var/lib/wicked-dr
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/wicked-dr.example.yaml /etc/wicked-dr/config.example.yaml
USER 888:888
VOLUME ["/var/lib/wicked-dr"]
ENV WICKED_DR_CONFIG=/etc/wicked-dr/config.yaml
# The daemon's /healthz, /readyz and /metrics, reachable from outside the container (the
# default outside a container is 127.0.0.1:9464).
ENV WICKED_DR_DAEMON__LISTEN=0.0.0.0:9464
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=8)"]
ENTRYPOINT ["wicked-dr"]
CMD ["daemon"]
