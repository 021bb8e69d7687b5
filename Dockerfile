FROM python:3.11-slim
WORKDIR /app

# Dependencies first, in their own layer: a change to the source does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['monitor']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY README.md alembic.ini ./
COPY service service
COPY workers workers
COPY models models
COPY migrations migrations
COPY examples examples
RUN pip install --no-cache-dir --no-deps -e .

RUN useradd --create-home --uid 10001 trainyard && mkdir -p /var/lib/trainyard && chown trainyard /var/lib/trainyard
USER trainyard
# Listening on every interface needs TRAINYARD_API_TOKENS (or TRAINYARD_ALLOW_OPEN=true).
ENV TRAINYARD_HOME=/var/lib/trainyard TRAINYARD_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["trainyard", "api"]
