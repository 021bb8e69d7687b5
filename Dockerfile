FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service service
COPY workers workers
COPY models models
COPY migrations migrations
COPY examples examples
RUN pip install --no-cache-dir -e . flower==2.2.0
ENV TRAINYARD_HOME=/var/lib/trainyard TRAINYARD_HOST=0.0.0.0
EXPOSE 8000
CMD ["trainyard", "api"]
