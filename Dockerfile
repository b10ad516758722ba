# ganforge runtime image: Ray's CUDA image (Ray and Python pinned to the versions in
# pyproject.toml) with ganforge installed. Used by the Helm chart for training and serving.
#   docker build -t ghcr.io/<you>/ganforge:0.1.0 .
# Ray, the Python version and the torch build can be changed with build args:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu

# Re-declared: ARGs before FROM are not visible after it.
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
# Where torch comes from. PyPI's Linux x86-64 wheel is the CUDA build and bundles its CUDA
# runtime (the node needs only the NVIDIA driver); pick another CUDA build with
# https://download.pytorch.org/whl/cuXXX.
ARG TORCH_INDEX=https://pypi.org/simple

# The Ray images run as the non-root user `ray` (uid 1000, group users = 100); numeric IDs
# let Kubernetes verify runAsNonRoot.
USER 1000:100
WORKDIR /home/ray/ganforge

# torch first (its own layer, the largest): code edits do not re-download it.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY --chown=1000:100 pyproject.toml README.md constraints.txt ./
COPY --chown=1000:100 ganforge ganforge
COPY --chown=1000:100 data data
COPY --chown=1000:100 configs configs
COPY --chown=1000:100 models models
COPY --chown=1000:100 kernels kernels
COPY --chown=1000:100 cluster cluster
COPY --chown=1000:100 serve serve
COPY --chown=1000:100 quality quality
# Pin Ray to the base image's version so pip never swaps the cluster runtime underneath it.
# constraints.txt: the versions CI tested (make lock)
RUN pip install --no-cache-dir -c constraints.txt . "ray[default,serve,train]==${RAY_VERSION}" \
    && ganforge --help > /dev/null

# Writable caches for a read-only root filesystem (the chart mounts an emptyDir at /tmp).
ENV XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/.triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.torchinductor \
    MPLCONFIGDIR=/tmp/.matplotlib

# No ENTRYPOINT: KubeRay and `ray up` start the Ray processes themselves.
CMD ["ganforge", "--help"]
