# kws in a container: the same install script that CI and the README use.
#   docker build -t kws .
#   docker run --rm -v /path/to/speech_commands:/data kws pipeline --data /data
FROM python:3.11-slim-bookworm

WORKDIR /opt/kws
# The script installs Debian packages itself (it runs as root here).
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY kws/ kws/
RUN bash scripts/setup.sh && rm -rf /root/.cache/pip

COPY models/ models/
COPY export/ export/
ENV PATH="/opt/kws/.venv/bin:${PATH}" \
    KWS_DATA_DIR=/data
ENTRYPOINT ["kws"]
CMD ["--help"]
