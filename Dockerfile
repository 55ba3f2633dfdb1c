# One image for every part of the pipeline; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, built from /src and installed (not editable: the dbt project and the dashboard
# definition ship inside it), then the sources go. A C compiler for the build only: Cython
# compiles the per-event code (setup.py); the build fails if a module did not compile.
WORKDIR /src
COPY pyproject.toml setup.py requirements.lock README.md ./
COPY fraudstream ./fraudstream
COPY producer ./producer
COPY stream_processor ./stream_processor
COPY batch ./batch
COPY dbt_project ./dbt_project
COPY dashboard ./dashboard
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir -c requirements.lock . \
    && cd / && python -c "import stream_processor.rowtext, stream_processor.treewalk, fraudstream.schema as s; from stream_processor.features import COMPILED; assert COMPILED and s.__file__.endswith('.so')" \
    && python -c "from batch.build import PROJECT_DIR as p; assert (p / 'dbt_project.yml').is_file()" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* /src

WORKDIR /app
COPY data/transactions.csv ./data/transactions.csv

ENV DATABASE_URL=sqlite:////data/finance.db
VOLUME ["/data"]
CMD ["fraudstream", "--help"]
