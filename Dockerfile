# One image for every part of the pipeline; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached while only the code changes), pinned by requirements.lock.
COPY pyproject.toml setup.py requirements.lock README.md ./
COPY fraudstream ./fraudstream
COPY producer ./producer
COPY stream_processor ./stream_processor
COPY batch ./batch
# Editable: the dbt project and the dashboard are found beside the packages, in /app. A C
# compiler for the install only: Cython compiles the per-event code (setup.py), then it goes;
# the build fails if a module did not compile.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir -c requirements.lock -e . \
    && python -c "import stream_processor.rowtext, stream_processor.treewalk, fraudstream.schema as s; from stream_processor.features import COMPILED; assert COMPILED and s.__file__.endswith('.so')" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

COPY dbt_project ./dbt_project
COPY dashboard ./dashboard
COPY data/transactions.csv ./data/transactions.csv

ENV DATABASE_URL=sqlite:////data/finance.db
VOLUME ["/data"]
CMD ["fraudstream", "--help"]
