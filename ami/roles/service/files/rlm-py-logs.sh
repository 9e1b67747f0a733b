#!/bin/sh
# rlm-py-logs LOG_FILE AGENT_CONFIG AGENT_CTL ENV_FILE...
#
# Point the Amazon CloudWatch agent at the service's JSON log: read RLM_LOG_GROUP from the
# environment files (the last one that sets it wins, as in the unit), write the agent's
# configuration and (re)start the agent with it. With RLM_LOG_GROUP unset (a dev instance, an
# image before its user data ran) it stops the agent and exits 0: logs stay on the host.
# Run by rlm-py-logs.service at boot and whenever the fleet's user data rewrites stack.env
# (rlm-py-logs.path). POSIX sh: no pipes whose failure would go unseen.
set -eu

if [ $# -lt 4 ]; then
  echo "usage: rlm-py-logs LOG_FILE AGENT_CONFIG AGENT_CTL ENV_FILE..." >&2
  exit 2
fi
log_file=$1
config=$2
ctl=$3
shift 3

group=""
for env_file in "$@"; do
  [ -r "$env_file" ] || continue
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      RLM_LOG_GROUP=*) group=${line#RLM_LOG_GROUP=} ;;
    esac
  done < "$env_file"
done
# systemd's EnvironmentFile allows one pair of quotes around a value.
case $group in
  \"*\") group=${group#\"}; group=${group%\"} ;;
  \'*\') group=${group#\'}; group=${group%\'} ;;
esac

if [ -z "$group" ]; then
  echo "rlm-py-logs: RLM_LOG_GROUP is not set; the service's log stays in $log_file"
  # An agent that never ran may answer its stop with an error: nothing to stop then.
  if [ -x "$ctl" ]; then
    "$ctl" -a stop || true
  fi
  exit 0
fi
# CloudWatch Logs' own alphabet for group names: nothing here needs escaping in JSON.
case $group in
  *[!A-Za-z0-9._/#-]*)
    echo "rlm-py-logs: RLM_LOG_GROUP=$group is not a CloudWatch Logs group name" >&2
    exit 1
    ;;
esac
if [ ! -x "$ctl" ]; then
  echo "rlm-py-logs: $ctl not found: is the CloudWatch agent installed (rlm_cloudwatch_agent)?" >&2
  exit 1
fi

tmp="$config.tmp"
cat > "$tmp" <<JSON
{
  "logs": {
    "logs_collected": {
      "files": {
        "collect_list": [
          {
            "file_path": "$log_file",
            "log_group_name": "$group",
            "log_stream_name": "{instance_id}",
            "timezone": "UTC"
          }
        ]
      }
    }
  }
}
JSON
mv "$tmp" "$config"
"$ctl" -a fetch-config -m ec2 -c "file:$config" -s
echo "rlm-py-logs: shipping $log_file to CloudWatch Logs group $group"
