# One image for the operator and the exporter: non-root, read-only-root friendly, hash-pinned dependencies.
# BASE is any Debian-based image with Python 3.11+ and its venv module (make image builds one without a registry;
# see tests/image/build.sh). Build: podman build --build-arg BASE=python:3.11-slim -t dsexport:dev .
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG SOURCE_DATE_EPOCH=0
WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN python3 -m venv /opt/dsexport \
 && /opt/dsexport/bin/pip install --no-cache-dir --no-compile --disable-pip-version-check --require-hashes \
      -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY operator operator
# --no-compile above, one compile here with unchecked hashes: .pyc files then depend on the sources only, not on
# their timestamps, so the same inputs give the same bytes.
RUN /opt/dsexport/bin/pip install --no-cache-dir --no-compile --disable-pip-version-check --no-deps . \
 && /opt/dsexport/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/dsexport

FROM ${BASE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="dsexport" \
      org.opencontainers.image.description="Kubernetes operator and exporter: datasets to cloud storage on a schedule, exactly once" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/dsexport /opt/dsexport
ENV PATH=/opt/dsexport/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 is the conventional "nonroot" uid; the chart also sets runAsNonRoot and a read-only root filesystem. It has
# a name, as in distroless images: libraries that ask who runs them (getpass.getuser) fail for a nameless uid.
RUN echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'nonroot:x:65532:' >>/etc/group
USER 65532:65532
ENTRYPOINT ["dsexport"]
CMD ["--help"]
