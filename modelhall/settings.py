"""Settings shared by every part of Modelhall.

Read, in order of precedence, from ``MODELHALL_*`` environment variables, then from a
TOML config file (``MODELHALL_CONFIG``, default ``modelhall.toml`` in the working
directory), then from defaults that need nothing running: SQLite and blob files under
the data directory.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_URL = "http://127.0.0.1:8600"
# Browsers keep cookies per host name, not per port: the demo origin's default is the other name of the
# loopback address, so that it has a cookie jar of its own (see default_demo_url).
LOOPBACK_TWINS = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}
GITHUB = {"authorize_url": "https://github.com/login/oauth/authorize",
          "access_token_url": "https://github.com/login/oauth/access_token", "api_base_url": "https://api.github.com/"}


class OIDCProvider(BaseModel):
    """One identity provider users log in with.

    Either an OpenID Connect issuer by its discovery URL, or ``preset: github`` (plain
    OAuth 2: GitHub has no ID tokens). ``organisations`` maps values of the
    ``groups_claim`` to organisations, as ``"org"`` (a reader) or ``"org:maintainer"``.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    discovery_url: str | None = None
    preset: str | None = Field(default=None, pattern="^github$")
    client_id: str
    client_secret: str = ""
    scope: str = "openid email profile"
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    organisations: dict[str, str] = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELHALL_", extra="ignore")

    data_dir: Path = Path(".modelhall")
    database: str | None = None
    storage: str | None = None
    # For s3:// storage (an s3:// URL's ?endpoint=&region=&addressing=&redirect= win); credentials the AWS ways.
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_addressing: str = Field(default="auto", pattern="^(auto|path|virtual)$")
    storage_redirect: bool = True  # blob GETs answer with a short-lived presigned URL where the store has them
    url: str = DEFAULT_URL
    secret_key: str | None = None
    token_ttl_seconds: int = 300
    max_manifest_bytes: int = 4 * 1024 * 1024
    # The largest request body a prediction, an async run or a demo upload may have (bytes); a spec's own
    # file limits (``max_size``) make it smaller for that model's predict API and async runs.
    max_request_bytes: int = Field(default=64 * 1024**2, gt=0)
    unpack_max_bytes: int = 20 * 1024**3
    unpack_max_members: int = 100_000
    runtime: str = Field(default="local", pattern="^(local|kubernetes|openfaas)$")
    # --- MODELHALL_RUNTIME=kubernetes (adapters/runtimes/kubernetes.py) ---
    k8s_namespace: str = "modelhall-models"  # where every model's Deployment, Secret and NetworkPolicy live
    k8s_image: str = ""  # the model-server image, pinned by digest; its entry: python -m modelhall.showcase.bootstrap
    k8s_kubeconfig: str | None = None  # none: the in-cluster service account, else ~/.kube/config
    k8s_registry_url: str = ""  # the registry as pods reach it (in-cluster Service URL); default: url
    k8s_registry_labels: dict[str, str] = Field(  # the registry pods' labels: NetworkPolicies admit them only
        default_factory=lambda: {"app.kubernetes.io/name": "modelhall-registry"})
    k8s_registry_namespace: str = "modelhall"  # the registry's own namespace (for NetworkPolicies)
    k8s_model_port: int = 8080  # the port a model server listens on inside its pod
    # resources.gpu.type short names → values of the node label nvidia.com/gpu.product (a raw value passes as is)
    k8s_gpu_products: dict[str, str] = Field(default_factory=lambda: {
        "t4": "Tesla-T4", "l4": "NVIDIA-L4", "a10g": "NVIDIA-A10G", "a100": "NVIDIA-A100-SXM4-80GB",
        "a100-40gb": "NVIDIA-A100-SXM4-40GB", "h100": "NVIDIA-H100-80GB-HBM3"})
    # The toleration GPU pods get (the GPU Operator's taint by default); {} for none. env: a JSON object
    k8s_gpu_toleration: dict[str, str] = Field(default_factory=lambda: {
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    k8s_gpu_runtime_class: str | None = "nvidia"  # runtimeClassName of GPU pods; empty for the cluster's default
    k8s_unschedulable_wait: float = 60.0  # how long a pod may stay unplaceable (a cluster autoscaler adding a node)
    k8s_pull_token_ttl: int = 3600  # lifetime of a pod's pull-only credential for its one version
    allow_model_network: bool = False  # a spec's runtime.network: true is refused unless the operator allows it
    wake_timeout: float = 120.0
    # --- MODELHALL_RUNTIME=openfaas (adapters/runtimes/openfaas.py); also uses k8s_image, k8s_registry_url,
    # k8s_gpu_products, k8s_pull_token_ttl, and k8s_kubeconfig for scale to zero ---
    openfaas_gateway: str = "http://gateway.openfaas:8080"
    openfaas_username: str = "admin"
    openfaas_password: str = ""
    openfaas_namespace: str = Field(default="openfaas-fn", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    openfaas_gpu_profile: str | None = None  # an OpenFaaS Profile granting GPUs; without one no GPU model runs
    openfaas_pro: bool = False  # OpenFaaS Pro's autoscaler is in charge of replicas (and of scale to zero)
    openfaas_kubernetes: bool = True  # scale idle functions' Deployments to zero through the Kubernetes API
    reaper_interval: float = 5.0
    gc_interval: float = 3600.0  # seconds between garbage collections (registry/gc.py); 0: never
    gc_blob_grace: float = 3600.0  # an unreferenced blob younger than this is kept (an upload in flight)
    upload_ttl: float = 24 * 3600.0  # an upload session not written to for this long is swept
    oidc_providers: list[OIDCProvider] = Field(default_factory=list)  # env: a JSON list
    session_max_age: int = 14 * 24 * 3600
    gallery_url: str | None = None  # where the Streamlit gallery runs: logins may return there
    demo_url: str = ""  # the demos' own origin; default: default_demo_url(url)
    log_level: str = Field(default="warning", pattern="^(debug|info|warning|error)$")  # info: access log too

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("MODELHALL_CONFIG", "modelhall.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file))

    @model_validator(mode="after")
    def _demo_origin(self) -> Settings:
        self.demo_url = (self.demo_url or default_demo_url(self.url)).rstrip("/")
        return self

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; ``postgresql://`` is mapped onto the psycopg 3 driver."""
        url = self.database or f"sqlite:///{self.data_dir.resolve() / 'modelhall.db'}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url

    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{self.data_dir.resolve() / 'storage'}"

    @property
    def s3_defaults(self) -> dict[str, object]:
        return {"endpoint": self.s3_endpoint, "region": self.s3_region, "addressing": self.s3_addressing,
                "redirect": self.storage_redirect}

    @cached_property
    def signing_key(self) -> str:
        """The key that signs registry tokens: configured, or created once in the data dir.

        Kept on disk (not in memory) so that every replica sharing the data dir, and
        the registry after a restart, accepts the tokens the others issued.
        """
        if self.secret_key:
            return self.secret_key
        key_file = self.data_dir / "secret.key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            candidate = key_file.with_suffix(f".{os.getpid()}.tmp")
            candidate.write_text(secrets.token_urlsafe(48))
            candidate.chmod(0o600)
            try:
                os.link(candidate, key_file)  # first writer wins; the others read its key
            except FileExistsError:
                pass
            finally:
                candidate.unlink()
        return key_file.read_text().strip()


def default_demo_url(registry_url: str, port: int | None = None) -> str:
    """Where demos are served when ``MODELHALL_DEMO_URL`` is not set: the registry's port + 1 (or
    ``port``), under the other name of the loopback address when the registry has one of them
    (``127.0.0.1`` ↔ ``localhost``). Two names are two cookie jars; two ports of one name share one."""
    parts = urlsplit(registry_url)
    host = parts.hostname or "127.0.0.1"
    port = port or (parts.port or (443 if parts.scheme == "https" else 80)) + 1
    host = LOOPBACK_TWINS.get(host, host)
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)
