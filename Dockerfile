# actmax server and simulated rig, with the BigGAN generators (weights separate: docs/generators.md).
# TORCH_SPEC's default is PyPI's torch, on Linux a CUDA build of several GB: a GPU host needs nothing more
# (unless its driver is too old for that CUDA: then give the build and --index-url pytorch.org names for the
# driver). A CPU-only image is far smaller; docker-compose.cpu.yml builds one, and so does
#   docker build -t actmax:cpu --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" .
# The default command serves on the container's loopback only, so a bare `docker run -p` reaches
# nothing: override it as docker-compose.yml does (README, "Docker").
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ACTMAX_DATA_DIR=/data

WORKDIR /app
RUN pip install --no-cache-dir ${TORCH_SPEC}
COPY pyproject.toml README.md LICENSE ./
COPY server ./server
COPY rig_client ./rig_client
COPY optimizers ./optimizers
COPY generators ./generators
COPY analysis ./analysis
COPY insilico ./insilico
RUN pip install --no-cache-dir '.[reference,nwb,biggan]' \
 && pip install --no-cache-dir --no-deps gan-face-generate

# /rig-keys: a rig's CURVE keys in a volume of its own (docker-compose.yml's sim rig)
RUN useradd --create-home --uid 10001 actmax && mkdir -p /data /rig-keys && chown actmax:actmax /data /rig-keys
USER actmax
VOLUME ["/data"]
EXPOSE 8000 5555
CMD ["actmax", "serve"]
