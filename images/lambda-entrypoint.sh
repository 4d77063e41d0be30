#!/bin/sh
# The entrypoint convention of AWS's Lambda base images: the handler comes as the command
# (`CMD ["settle.handler"]`), the function's code is in $LAMBDA_TASK_ROOT (the working
# directory), and the runtime interface client polls the Runtime API at $AWS_LAMBDA_RUNTIME_API
# (set by Lambda, and by the Sluice operator to the function runner beside this container).
set -e
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  echo "lambda-entrypoint.sh: AWS_LAMBDA_RUNTIME_API is not set: run this image under AWS Lambda, a Sluice function runner, or the Lambda runtime interface emulator" >&2
  exit 1
fi
if [ $# -eq 0 ]; then
  echo "lambda-entrypoint.sh: no handler given (the command, e.g. settle.handler)" >&2
  exit 1
fi
# As Lambda's own environment does: the handler's name is also in _HANDLER.
export _HANDLER="${_HANDLER:-$1}"
exec python3 -m awslambdaric "$@"
