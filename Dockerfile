# The sessionizer worker image. Build: docker build -t sessionizer .
# Run (the token as docs/security.md says; /sessions needs it off loopback):
#   docker run --rm -e SESSIONIZER_BROKER_URL=kafka://kafka-1:9092 \
#     -e SESSIONIZER_WEB_TOKEN="$(openssl rand -hex 32)" -p 127.0.0.1:6066:6066 sessionizer
# Any other command works too: docker run --rm sessionizer tail sessions --broker ...

# Builder: the wheel with the engine compiled by mypyc (setup.py), which needs a C compiler.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sessionizer ./sessionizer
RUN pip wheel --no-deps --wheel-dir /wheels .

# The image: no compiler; every runtime dependency ships a manylinux x86_64 wheel for
# CPython 3.11, and the build fails unless the installed package runs the compiled engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/sessionizer-*.whl \
    && rm -rf /wheels \
    && sessionizer --version | grep -q '(compiled)' \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/sessionizer --shell /usr/sbin/nologin sessionizer \
    && mkdir -p /var/lib/sessionizer \
    && chown sessionizer:sessionizer /var/lib/sessionizer

# In a container the web server must listen on every interface to be reachable
# through a published port. State is RocksDB on the volume: a restart reads no
# changelog (6.8 s to ready at 1M devices against 120 s in memory, docs/performance.md).
ENV SESSIONIZER_WEB_HOST=0.0.0.0 \
    SESSIONIZER_WEB_PORT=6066 \
    SESSIONIZER_STORE=rocksdb \
    SESSIONIZER_DATA_DIR=/var/lib/sessionizer

WORKDIR /var/lib/sessionizer
VOLUME ["/var/lib/sessionizer"]
USER sessionizer
EXPOSE 6066

ENTRYPOINT ["sessionizer"]
CMD ["worker"]
