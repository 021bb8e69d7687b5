# The base image is an argument, so that an offline build (deploy/compose_check.py) can use a stand-in.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /app

# Where torch and torchvision come from. Default: PyTorch's CPU-only wheel index (no CUDA libraries
# or triton in the image). Empty: PyPI's build, which on x86_64 is the CUDA one (the GPU worker's image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Dependencies first, in their own layer: a change to the source does not reinstall them. torch and
# torchvision come first, from TORCH_INDEX_URL; pip then finds them satisfied for the rest. A package
# index that needs an extra CA bundle gets it as a build secret (`--secret id=ca_bundle,src=FILE`),
# which stays out of the image.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['monitor']))" > /tmp/requirements.txt \
 && grep -E '^torch(vision)?==' /tmp/requirements.txt > /tmp/torch.txt \
 && pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple} \
      -r /tmp/torch.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt /tmp/torch.txt

COPY README.md alembic.ini ./
COPY service service
COPY workers workers
COPY models models
COPY migrations migrations
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip install --no-cache-dir --no-deps -e .

RUN useradd --create-home --uid 10001 trainyard && mkdir -p /var/lib/trainyard && chown trainyard /var/lib/trainyard
USER trainyard
# Listening on every interface needs TRAINYARD_API_TOKENS of at least 24 characters that are not
# .env.example's placeholders (or TRAINYARD_ALLOW_OPEN=true and no tokens).
ENV TRAINYARD_HOME=/var/lib/trainyard TRAINYARD_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["trainyard", "api"]
