# shellcheck shell=bash disable=SC2034 # the names set here are used by deploy.sh and teardown.sh
# Shared by deploy.sh and teardown.sh: configuration, resource names, and the command runners.
# Sourced, never run. Portable to bash 3.2 (macOS): no associative arrays, no mapfile, no ${x,,}.

# The settings a user may put in .env (or the environment; the environment wins).
CONFIG_KEYS="PROJECT REGION BUCKET PREFIX STAGING_RETENTION_DAYS LABELBOX_API_KEY WEBHOOK_SECRET ENGINE_WEIGHTS_WHEEL"
# Optional tuning passed through to every function unchanged (shared/config.py validates them).
TUNING_KEYS="VERTEX_OD_MODEL_TYPE VERTEX_CLASSIFICATION_MODEL_TYPE VERTEX_BUDGET_MILLI_NODE_HOURS
VERTEX_OD_BUDGET_MILLI_NODE_HOURS VERTEX_CLASSIFICATION_BUDGET_MILLI_NODE_HOURS
PREDICT_CONFIDENCE_THRESHOLD PREDICT_MAX_PREDICTIONS PREDICT_ON_TRAINING MONITOR_INITIAL_DELAY_S
MONITOR_MAX_DELAY_S MONITOR_MAX_WAIT_S MONITOR_TRAINING_MARGIN_S STAGE_LEASE_SECONDS MAX_WEBHOOK_BYTES
ETL_COPY_CONCURRENCY ETL_MAX_IMAGE_BYTES ETL_MAX_IMAGE_PIXELS ETL_CHUNK_ROWS ETL_SHARD_ROWS ETL_EXPORT_WAIT_S
ETL_RARE_LABELS SHARD_ATTEMPTS INFERENCE_SHARD_ROWS
LABELBOX_ENDPOINT LABELBOX_REST_ENDPOINT LOG_LEVEL
VERTEX_CUSTOM_IMAGE_URI VERTEX_CUSTOM_MACHINE_TYPE VERTEX_CUSTOM_ACCELERATOR_TYPE
VERTEX_CUSTOM_ACCELERATOR_COUNT VERTEX_CUSTOM_STEPS VERTEX_CUSTOM_TIMEOUT_S VERTEX_CUSTOM_REGION_CHECK
VERTEX_CUSTOM_HOURLY_USD CHAIN_MODEL_TYPE_MODULES"

FUNCTIONS="models model_run etl train monitor inference"
STAGES_WITH_URLS="etl train monitor inference"
LABEL_KEY="lb_chain"
LABELBOX_KEY_PATH="/etc/secrets/labelbox/api_key"
WEBHOOK_SECRET_PATH="/etc/secrets/webhook/secret"

DRY_RUN=0
PRIVATE_TMP=""

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

say() {
  printf '%s\n' "$*"
}

warn() {
  printf 'warning: %s\n' "$*" >&2
}

# Reads KEY=VALUE lines of a .env file into shell variables that are not already set. Nothing is
# executed and nothing is exported, so the secrets in it never reach a child process's environment.
load_env_file() {
  local file=$1 line key value lineno=0
  [ -f "$file" ] || die "env file $file does not exist"
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    case $line in '' | '#'*) continue ;; esac
    line=${line#export }
    case $line in *=*) ;; *) die "$file:$lineno: expected KEY=VALUE" ;; esac
    key=${line%%=*}
    value=${line#*=}
    case $value in
      \"*\") value=${value#\"} value=${value%\"} ;;
      \'*\') value=${value#\'} value=${value%\'} ;;
    esac
    case " $CONFIG_KEYS $(printf '%s' "$TUNING_KEYS" | tr '\n' ' ') " in
      *" $key "*) ;;
      *) die "$file:$lineno: unknown setting $key (known: $CONFIG_KEYS and the tuning keys in --help)" ;;
    esac
    if [ -z "${!key+set}" ]; then
      printf -v "$key" '%s' "$value"
    fi
  done <"$file"
}

# Validates the configuration and derives every resource name from it, reporting all problems at once.
load_config() {
  local problems=""
  PROJECT=${PROJECT:-}
  REGION=${REGION:-us-central1}
  PREFIX=${PREFIX:-lb-chain}
  STAGING_RETENTION_DAYS=${STAGING_RETENTION_DAYS:-30}
  if [ -z "$PROJECT" ]; then
    problems="$problems
  PROJECT is required: the Google Cloud project ID to deploy into (e.g. PROJECT=my-project)"
  elif ! [[ $PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
    problems="$problems
  PROJECT=$PROJECT is not a project ID (6-30 lowercase letters, digits and hyphens)"
  fi
  if ! [[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]]; then
    problems="$problems
  REGION=$REGION is not a Google Cloud region (e.g. us-central1)"
  fi
  if ! [[ $PREFIX =~ ^[a-z][a-z0-9-]{1,20}[a-z0-9]$ ]]; then
    problems="$problems
  PREFIX=$PREFIX must be 3-22 lowercase letters, digits or hyphens, starting with a letter"
  fi
  BUCKET=${BUCKET:-${PROJECT}-${PREFIX}}
  BUCKET=${BUCKET#gs://}
  if ! [[ $BUCKET =~ ^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$ ]]; then
    problems="$problems
  BUCKET=$BUCKET is not a bucket name (3-63 lowercase letters, digits, - and _)"
  fi
  if ! [[ $STAGING_RETENTION_DAYS =~ ^[1-9][0-9]{0,4}$ ]]; then
    problems="$problems
  STAGING_RETENTION_DAYS=$STAGING_RETENTION_DAYS must be a whole number of days (1 or more)"
  fi
  if [ -n "$problems" ]; then
    die "invalid configuration (set these in the environment or in .env):$problems"
  fi
  SA_ID="${PREFIX}-runtime"
  SA_EMAIL="${SA_ID}@${PROJECT}.iam.gserviceaccount.com"
  SA_MEMBER="serviceAccount:${SA_EMAIL}"
  QUEUE="${PREFIX}-tasks"
  SECRET_API_KEY="${PREFIX}-labelbox-api-key"
  SECRET_WEBHOOK="${PREFIX}-webhook-secret"
  LABEL="${LABEL_KEY}=${PREFIX}"
}

# The public pair keeps the exact names Labelbox appends to the base URL; the internal stages carry
# the prefix. So one chain serves one region of a project (deploy.sh refuses to take over a public
# pair that another deployment labelled as its own).
fn_name() {
  case $1 in
    models | model_run) printf '%s' "$1" ;;
    *) printf '%s-%s' "$PREFIX" "$1" ;;
  esac
}

fn_gen() {
  case $1 in
    models | model_run | monitor) printf 1 ;;
    *) printf 2 ;;
  esac
}

fn_public() {
  case $1 in models | model_run) return 0 ;; *) return 1 ;; esac
}

# What each stage needs: gen1 allows at most 540 s, gen2 HTTP functions 3600 s. No stage is designed to
# need more than 540 s (ETL and inference delivery run in shards), well inside Cloud Tasks' dispatch deadline.
fn_timeout() {
  case $1 in
    models) printf 30s ;;
    model_run) printf 60s ;;
    etl) printf 540s ;;
    train) printf 540s ;;
    monitor) printf 120s ;;
    inference) printf 540s ;;
  esac
}

fn_memory() {
  case $1 in
    models | model_run) printf 256MB ;;
    monitor) printf 512MB ;;
    etl | inference) printf 2Gi ;;
    train) printf 1Gi ;;
  esac
}

# The field of `gcloud functions describe` holding the URL other callers use (and the OIDC audience).
fn_url_field() {
  if [ "$(fn_gen "$1")" = 1 ]; then printf 'httpsTrigger.url'; else printf 'serviceConfig.uri'; fi
}

upper() {
  printf '%s' "$1" | tr '[:lower:]' '[:upper:]'
}

quote_arg() {
  case $1 in
    '' | *[!A-Za-z0-9_./:=@,+%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

show() {
  local arg line="+"
  for arg in "$@"; do
    line="$line $(quote_arg "$arg")"
  done
  printf '%s\n' "$line"
}

# Runs a command that changes something: printed first, and only printed under --dry-run.
run() {
  show "$@"
  [ "$DRY_RUN" = 1 ] && return 0
  "$@"
}

# Like run, for IAM changes: a service account created seconds ago can take a moment to be known.
run_retrying() {
  show "$@"
  [ "$DRY_RUN" = 1 ] && return 0
  local attempt=1 delay=${RETRY_DELAY_S:-4}
  until "$@" >"$PRIVATE_TMP/out" 2>"$PRIVATE_TMP/err"; do
    if [ "$attempt" -ge 5 ]; then
      cat "$PRIVATE_TMP/err" >&2
      die "failed after $attempt attempts: $*"
    fi
    warn "attempt $attempt failed ($(tail -n 1 "$PRIVATE_TMP/err")); retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
}

# Runs a removal that may find nothing to remove (a second teardown): "not found" is success.
run_absent_ok() {
  show "$@"
  [ "$DRY_RUN" = 1 ] && return 0
  if ! "$@" >"$PRIVATE_TMP/out" 2>"$PRIVATE_TMP/err"; then
    if is_not_found "$PRIVATE_TMP/err"; then
      say "  (already gone)"
      return 0
    fi
    cat "$PRIVATE_TMP/err" >&2
    die "failed: $*"
  fi
}

is_not_found() {
  grep -Eqi 'not[ _]found|NOT_FOUND|does not exist|404|no such' "$1"
}

# A read-only lookup, run even under --dry-run. Stores stdout in the variable named by $1 and returns
# 0 when the resource exists, 1 when gcloud says it does not; any other failure stops the script.
lookup() {
  local var=$1
  shift
  local out
  if out=$("$@" 2>"$PRIVATE_TMP/lookup_err"); then
    printf -v "$var" '%s' "$out"
    return 0
  fi
  printf -v "$var" '%s' ""
  if is_not_found "$PRIVATE_TMP/lookup_err"; then
    return 1
  fi
  cat "$PRIVATE_TMP/lookup_err" >&2
  die "could not read: $* (are you logged in with 'gcloud auth login', with access to $PROJECT?)"
}

make_private_tmp() {
  PRIVATE_TMP=$(mktemp -d "${TMPDIR:-/tmp}/lb-chain.XXXXXX")
  chmod 700 "$PRIVATE_TMP"
  trap 'rm -rf "$PRIVATE_TMP"' EXIT
}

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required but was not found on PATH"
  done
}

project_number() {
  lookup PROJECT_NUMBER gcloud projects describe "$PROJECT" --format='value(projectNumber)' ||
    die "project $PROJECT does not exist or you cannot see it (gcloud auth login; check PROJECT)"
  [ -n "$PROJECT_NUMBER" ] || die "could not read the project number of $PROJECT"
  VERTEX_AGENT="service-${PROJECT_NUMBER}@gcp-sa-aiplatform.iam.gserviceaccount.com"
}

# The label value deploy.sh put on a function (exists) or nothing (returns 1 when absent).
function_label() {
  lookup "$1" gcloud functions describe "$(fn_name "$2")" --project="$PROJECT" --region="$REGION" \
    --format="value(labels.${LABEL_KEY})"
}

# The settings file: --env-file when given, else .env at the repository root when present.
load_settings_file() {
  if [ -n "$ENV_FILE" ]; then
    load_env_file "$ENV_FILE"
  elif [ -f "$ROOT/.env" ]; then
    load_env_file "$ROOT/.env"
  fi
}
