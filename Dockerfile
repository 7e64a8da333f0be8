# The sessionizer worker image. Build: docker build -t sessionizer .
# Run:   docker run --rm -e SESSIONIZER_BROKER_URL=kafka://kafka-1:9092 -p 6066:6066 sessionizer
# Any other command works too: docker run --rm sessionizer tail sessions --broker ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first (cached while only the code changes), then the package itself.
# Every runtime dependency ships a manylinux x86_64 wheel for CPython 3.11, so no
# compiler is needed here.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sessionizer ./sessionizer
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/sessionizer --shell /usr/sbin/nologin sessionizer \
    && mkdir -p /var/lib/sessionizer \
    && chown sessionizer:sessionizer /var/lib/sessionizer

# In a container the web server must listen on every interface to be reachable
# through a published port; state (tables, RocksDB if chosen) goes to the volume.
ENV SESSIONIZER_WEB_HOST=0.0.0.0 \
    SESSIONIZER_WEB_PORT=6066 \
    SESSIONIZER_DATA_DIR=/var/lib/sessionizer

WORKDIR /var/lib/sessionizer
VOLUME ["/var/lib/sessionizer"]
USER sessionizer
EXPOSE 6066

ENTRYPOINT ["sessionizer"]
CMD ["worker"]
