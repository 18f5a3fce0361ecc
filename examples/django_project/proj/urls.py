from demoapp import views
from django.urls import path

urlpatterns = [
    path("orders/", views.create_order, name="create-order"),
    path("orders/<int:order_id>/", views.order_detail, name="order-detail"),
    path("orders/count/", views.count_orders, name="count-orders"),
    path("tasks/<str:task_id>/", views.task_status, name="task-status"),
]
