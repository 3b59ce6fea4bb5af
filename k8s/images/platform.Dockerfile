# The platform image: the registry (`modelhall up`) and the gallery (`modelhall gallery`).
# Build from the repository root:  docker build -f k8s/images/platform.Dockerfile -t modelhall/platform:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/modelhall
COPY pyproject.toml setup.py README.md /src/
COPY modelhall /src/modelhall
COPY registry /src/registry
COPY showcase /src/showcase
COPY adapters /src/adapters
COPY templates /src/templates
RUN /opt/modelhall/bin/pip install /src && /opt/modelhall/bin/modelhall --help > /dev/null

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/modelhall /opt/modelhall
ENV PATH=/opt/modelhall/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8600 8601 8501
ENTRYPOINT ["modelhall"]
CMD ["up", "--host", "0.0.0.0", "--port", "8600", "--demo-port", "8601"]
