from django.db import models


class Order(models.Model):
    """An order a view creates and a task processes in the worker."""

    item = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="new")
    processed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.item} ({self.status})"
