"""Routes → routing plan (rows grouped by ticket), computed once per forward."""

from .plan import BlockSchedule, RoutingPlan, block_schedule, make_plan
from .routes import plan_routes, route_checks_enabled, set_route_checks

__all__ = ["BlockSchedule", "RoutingPlan", "block_schedule", "make_plan", "plan_routes", "route_checks_enabled", "set_route_checks"]
