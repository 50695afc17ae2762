#!/usr/bin/env bash
# Removes what deploy.sh created for one deployment (same settings as deploy.sh). The bucket and the
# Vertex AI datasets, models and jobs (custom jobs too) stay unless --delete-data is given. Safe to run again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/deploy_lib.sh
. "$ROOT/scripts/deploy_lib.sh"

PYTHON=${PYTHON:-python3}

usage() {
  cat <<EOF
Usage: ./teardown.sh [--dry-run] [--delete-data] [--yes] [--env-file FILE]

Deletes this deployment's functions, Cloud Tasks queue, secrets, runtime service account and its
IAM bindings. Uses the same settings as deploy.sh (PROJECT, REGION, PREFIX, BUCKET).

  --delete-data    also delete the bucket (run records, images, predictions, the engine package
                   and the models its custom jobs trained, which are files there) and every
                   Vertex AI dataset, model, training pipeline, custom job and batch prediction
                   job labelled $LABEL_KEY=<PREFIX> (running jobs are cancelled first)
  --dry-run        print what would be deleted, delete nothing
  --yes            do not ask for confirmation (needed when no terminal is attached)
  --env-file FILE  read settings from FILE (default: .env beside this script, if present)
EOF
}

ENV_FILE=""
DELETE_DATA=0
ASSUME_YES=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --delete-data) DELETE_DATA=1 ;;
    --yes | -y) ASSUME_YES=1 ;;
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
unset LABELBOX_API_KEY WEBHOOK_SECRET
load_config
require_tools gcloud
[ "$DELETE_DATA" = 0 ] || require_tools "$PYTHON"
make_private_tmp
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

confirm() {
  local what="functions, queue $QUEUE, secrets and service account $SA_EMAIL"
  [ "$DELETE_DATA" = 1 ] && what="$what, AND the bucket gs://$BUCKET and the Vertex AI resources"
  say "This deletes deployment '$PREFIX' in $PROJECT/$REGION: $what."
  [ "$DRY_RUN" = 1 ] || [ "$ASSUME_YES" = 1 ] && return 0
  [ -t 0 ] || die "no terminal to confirm on: run again with --yes"
  local answer
  read -r -p "Type the PREFIX ($PREFIX) to go on: " answer
  [ "$answer" = "$PREFIX" ] || die "not confirmed; nothing was deleted"
}

delete_functions() {
  local f label
  say "== Functions"
  for f in $FUNCTIONS; do
    if ! function_label label "$f"; then
      say "  $(fn_name "$f"): not there"
    elif [ "$label" != "$PREFIX" ]; then
      warn "$(fn_name "$f") is labelled ${LABEL_KEY}='${label:-none}', not '$PREFIX': left alone"
    else
      run gcloud functions delete "$(fn_name "$f")" --project="$PROJECT" --region="$REGION" --quiet
    fi
  done
}

delete_queue() {
  # shellcheck disable=SC2034 # set by lookup, only its status matters
  local state
  say "== Cloud Tasks queue $QUEUE"
  if lookup state gcloud tasks queues describe "$QUEUE" --location="$REGION" --project="$PROJECT" \
    --format='value(state)'; then
    run gcloud tasks queues delete "$QUEUE" --location="$REGION" --project="$PROJECT" --quiet
    say "  (Cloud Tasks keeps a deleted queue's name for 7 days: a new deploy with this PREFIX before then"
    say "   fails to create the queue; use another PREFIX or wait)"
  else
    say "  not there"
  fi
}

delete_vertex_resources() {
  say "== Vertex AI resources labelled $LABEL"
  local args=(--project "$PROJECT" --region "$REGION" --label "$LABEL")
  [ "$DRY_RUN" = 1 ] && args+=(--dry-run)
  show "$PYTHON" scripts/vertex_cleanup.py "${args[@]}"
  "$PYTHON" "$ROOT/scripts/vertex_cleanup.py" "${args[@]}"
}

# Sets BUCKET_OWNER to the bucket's label (returns 1 when there is no bucket).
read_bucket_owner() {
  local found="" _location=""
  BUCKET_OWNER=""
  lookup found gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT" \
    --format="csv[no-heading](location,labels.${LABEL_KEY})" || return 1
  IFS=, read -r _location BUCKET_OWNER <<<"$found" || true
}

handle_bucket() {
  say "== Bucket gs://$BUCKET"
  if ! read_bucket_owner; then
    say "  not there"
    return 0
  fi
  if [ "$DELETE_DATA" = 1 ] && [ "$BUCKET_OWNER" = "$PREFIX" ]; then
    run gcloud storage rm --recursive "gs://$BUCKET" --project="$PROJECT"
    return 0
  fi
  if [ "$DELETE_DATA" = 1 ]; then
    warn "gs://$BUCKET was not created by this deployment (label ${LABEL_KEY}='${BUCKET_OWNER:-none}'):" \
      "not deleted"
  else
    say "  kept (run records, images, predictions, the engine package and its models); --delete-data deletes it"
  fi
  run_absent_ok gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="$SA_MEMBER" --role=roles/storage.objectAdmin
  if [ "$BUCKET_OWNER" = "$PREFIX" ]; then
    project_number
    run_absent_ok gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
      --member="serviceAccount:$VERTEX_AGENT" --role=roles/storage.objectViewer
    run_absent_ok gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
      --member="serviceAccount:$VERTEX_AGENT" --role=roles/storage.objectCreator
  fi
}

delete_secrets() {
  local name label
  for name in "$SECRET_API_KEY" "$SECRET_WEBHOOK"; do
    say "== Secret $name"
    if ! lookup label gcloud secrets describe "$name" --project="$PROJECT" \
      --format="value(labels.${LABEL_KEY})"; then
      say "  not there"
    elif [ "$label" != "$PREFIX" ]; then
      warn "secret $name is labelled ${LABEL_KEY}='${label:-none}', not '$PREFIX': left alone"
    else
      run gcloud secrets delete "$name" --project="$PROJECT" --quiet
    fi
  done
}

delete_service_account() {
  local found
  say "== Runtime service account $SA_EMAIL"
  # A project binding outlives its deleted account (as deleted:serviceAccount:...), so it goes first.
  run_absent_ok gcloud projects remove-iam-policy-binding "$PROJECT" --member="$SA_MEMBER" \
    --role=roles/aiplatform.user --condition=None --format=none
  if lookup found gcloud iam service-accounts describe "$SA_EMAIL" --project="$PROJECT" \
    --format='value(email)'; then
    run gcloud iam service-accounts delete "$SA_EMAIL" --project="$PROJECT" --quiet
  else
    say "  not there"
  fi
}

main() {
  [ "$DRY_RUN" = 1 ] && say "Dry run: commands that would delete something are printed, not run."
  confirm
  delete_functions
  delete_queue
  [ "$DELETE_DATA" = 0 ] || delete_vertex_resources
  handle_bucket
  delete_secrets
  delete_service_account
  say ""
  say "== Done$([ "$DRY_RUN" = 0 ] || printf ' (dry run: nothing was deleted)')"
  say "Left in place: the enabled APIs, and the build images Cloud Functions keeps in Artifact Registry"
  say "(repository gcf-artifacts in $REGION; delete them there if you no longer need them)."
}

main
