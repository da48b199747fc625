# One image per service from one file: `--build-arg SERVICE=gateway --build-arg PORT=3000`
# (`shopctl build` passes both from its service table). Every image holds the whole `shop`
# package; SERVICE only picks which service runs. Nothing in it is tied to one CPU: it builds
# for every platform the base image has (`shopctl build --platform linux/amd64,linux/arm64`),
# and every dependency ships wheels for both, so no compiler is needed on either.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# -- build: a virtual environment under /opt/shop ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/shop

# Dependencies first, read from pyproject.toml alone: this layer is reused until they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
    && /opt/shop/bin/pip install --no-cache-dir --requirement /tmp/requirements.txt

# Then the code (no dependencies left to fetch). pip compiles the bytecode as it installs,
# so the read-only image never needs to write any.
COPY README.md ./
COPY shopkit ./shopkit
COPY shopctl ./shopctl
COPY svc_gateway ./svc_gateway
COPY svc_product ./svc_product
COPY svc_user ./svc_user
COPY svc_order ./svc_order
COPY svc_cart ./svc_cart
RUN /opt/shop/bin/pip install --no-cache-dir --no-deps . \
    && /opt/shop/bin/pip uninstall --yes pip

# -- runtime: the slim base, the virtual environment, nothing else -------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE=gateway
ARG PORT=3000
LABEL org.opencontainers.image.title="shop-${SERVICE}" \
      org.opencontainers.image.description="The shop's ${SERVICE} service"
RUN groupadd --system --gid 1001 shop \
    && useradd --system --uid 1001 --gid shop --no-create-home --shell /usr/sbin/nologin shop
COPY --from=build /opt/shop /opt/shop
ENV PATH=/opt/shop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVICE_MODULE=svc_${SERVICE} \
    PORT=${PORT}
USER 1001:1001
EXPOSE ${PORT}
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/health', timeout=2)"]
# Exec form, no shell: the service is PID 1 and gets SIGTERM itself (it then finishes the
# requests in flight and closes its pools). runpy runs the module exactly as `python -m`.
CMD ["python", "-c", "import os, runpy; runpy.run_module(os.environ['SERVICE_MODULE'], run_name='__main__', alter_sys=True)"]
