# One image for every role (api, worker, beat, migrate, sandboxes): the role is the command,
# e.g. `docker run IMAGE worker`. See compose.yaml for a full deployment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs, so edits to tests or docs do not bust the install layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY migrations ./migrations
# Every dependency ships manylinux wheels (psycopg[binary], pillow, cryptography), so no compiler
# is needed. The source tree is removed afterwards: the installed copy is the only one imported.
RUN pip install . && rm -rf /src

# Run as an unprivileged user; its home holds the data dir (used only by the embedded default).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/orchestrator orchestrator
USER orchestrator
WORKDIR /home/orchestrator
ENV ORCH_DATA_DIR=/home/orchestrator/data

EXPOSE 8000
ENTRYPOINT ["orchestrator"]
CMD ["--help"]
