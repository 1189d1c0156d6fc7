-- Argo CD health check for atrelay.dev/v1alpha1 Relay objects.
-- Install: the value of `resource.customizations.health.atrelay.dev_Relay` in argocd-cm
-- (docs/operator.md). Tested by e2e/argocd/test.sh against Relays saved from the e2e suite.
-- Argo CD runs Lua 5.1 (gopher-lua), the test Lua 5.4: the check uses only what both share.
--
-- Reads only the operator's conditions, and only once they describe the current spec
-- (status.observedGeneration == metadata.generation), as kstatus does:
--   Stalled=True                          -> Degraded   (only a change to the Relay helps)
--   ReconciliationPaused=True, or stopped -> Suspended  (the operator or the relay is held on purpose)
--   Ready=True                            -> Healthy    (the relay serves: replays and live reads;
--                                                         CaughtUp=False only adds to the message)
--   anything else                         -> Progressing (with Ready's reason and message)
-- Ready follows the pod's readiness (`/_serving`), not "caught up with upstream": a restarted
-- relay dialling thousands of hosts serves its consumers, so it is Healthy; CaughtUp tells the rest.
local hs = { status = "Progressing", message = "Waiting for the relay operator to report on the latest spec" }
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  return hs
end
local conditions = {}
for _, condition in ipairs(status.conditions) do
  conditions[condition.type] = condition
end
local function said(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end
local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end
local paused = conditions["ReconciliationPaused"]
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = said(paused)
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "False" and ready.reason == "Stopped" then
  hs.status = "Suspended"
  hs.message = said(ready)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready)
  local caught_up = conditions["CaughtUp"]
  if caught_up ~= nil and caught_up.status == "False" then
    hs.message = hs.message .. "; not caught up yet: " .. said(caught_up)
  end
  return hs
end
if ready ~= nil then
  hs.message = said(ready)
end
return hs
