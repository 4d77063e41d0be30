# The example's settle function (examples/stocktrade/settle.py) as a Lambda-compatible image: the
# real awslambdaric, the code in /var/task, the handler as the command, and the entrypoint
# convention of AWS's Python base images, so the same image runs on AWS Lambda and under Sluice.
# From the repository's root:
#
#   docker build -f images/settle.Dockerfile -t ghcr.io/sluice-dev/sluice-example-settle:0.1.0 .
#
# images/build.sh makes the same contents without a daemon.

FROM debian:bookworm-slim AS wheels
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
COPY examples/stocktrade/requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --break-system-packages --no-cache-dir --only-binary :all: \
      --target /out/usr/local/lib/python3.11/dist-packages -r /tmp/requirements.txt \
 && rm -rf /out/usr/local/lib/python3.11/dist-packages/bin

FROM debian:bookworm-slim
COPY images/settle.packages /tmp/packages
RUN apt-get update \
 && grep -v '^#' /tmp/packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/packages \
 && echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'nonroot:x:65532:' >>/etc/group
COPY --from=wheels /out/ /
COPY images/lambda-entrypoint.sh /lambda-entrypoint.sh
COPY examples/stocktrade/settle.py /var/task/settle.py
ENV LAMBDA_TASK_ROOT=/var/task
WORKDIR /var/task
USER 65532:65532
ENTRYPOINT ["/lambda-entrypoint.sh"]
CMD ["settle.handler"]
