-- Argo CD health for the kubegate.dev kinds (GatewayRoute, RateLimitPolicy,
-- ApiKey, TLSPolicy). The operator reports Accepted/ResolvedRefs/Programmed/
-- Ready plus the kstatus pair Reconciling/Stalled, with observedGeneration.
-- Healthy only when Ready is True for the current generation: Programmed means a
-- data-plane replica has really loaded it, so "Healthy" is not a guess.
local hs = {}

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubegate operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubegate operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

-- Reconciling with reason Pending: a data plane is loading this generation.
-- Other Reconciling reasons (a missing Secret/Service, no data plane) keep
-- kstatus (Flux) waiting until its timeout, but here they fall through to
-- Degraded below: they need a person, and Argo CD should say so at once.
local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" and reconciling.reason == "Pending" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = ready and describe(ready) or "Waiting for the Ready condition"
  return hs
end

-- Ready is False and no data plane is merely loading: a missing Secret/Service,
-- a conflict, or no data plane running. It needs a person, so say why.
hs.status = "Degraded"
hs.message = describe(ready)
return hs
