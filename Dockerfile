# One image for every part of the pipeline; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached while only the code changes), pinned by requirements.lock.
COPY pyproject.toml requirements.lock README.md ./
COPY fraudstream ./fraudstream
COPY producer ./producer
COPY stream_processor ./stream_processor
COPY batch ./batch
# Editable: the dbt project and the dashboard are found beside the packages, in /app.
RUN pip install --no-cache-dir -c requirements.lock -e .

COPY dbt_project ./dbt_project
COPY dashboard ./dashboard
COPY data/transactions.csv ./data/transactions.csv

ENV DATABASE_URL=sqlite:////data/finance.db
VOLUME ["/data"]
CMD ["fraudstream", "--help"]
