# The model-server image: one image runs every bundle. At start it fetches its version's bundle by digest
# from the registry. It carries the models' libraries (the `models` extra: PyTorch, transformers,
# scikit-learn, …), which a version's requirements may use as they are; uv is there for environments.
# Build from the repository root:  docker build -f k8s/images/model-server.Dockerfile -t modelhall/model-server:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/modelhall
COPY pyproject.toml setup.py README.md /src/
COPY modelhall /src/modelhall
COPY registry /src/registry
COPY showcase /src/showcase
COPY adapters /src/adapters
COPY templates /src/templates
RUN /opt/modelhall/bin/pip install '/src[models]' && /opt/modelhall/bin/uv --version && /opt/modelhall/bin/modelhall serve --help > /dev/null

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/modelhall /opt/modelhall
ENV PATH=/opt/modelhall/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_CACHE_DIR=/tmp/uv-cache UV_NO_PROGRESS=1
USER 10001:10001
EXPOSE 8080
# The runtime gives each pod its command (`python -m modelhall.showcase.bootstrap`: python is this venv's).
ENTRYPOINT ["modelhall"]
