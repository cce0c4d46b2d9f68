local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 100 + tid)
  prefix = "t" .. tid .. "r" .. math.random(1, 1000000000) .. "n"
end
function request()
  counter = counter + 1
  local name = prefix .. counter
  local body = '{"username":"' .. name .. '","email":"' .. name .. '@example.com","password":"correct horse battery"}'
  return wrk.format("POST", "/api/v1/registrations", {["Content-Type"] = "application/json"}, body)
end
