from django.db import migrations, models


def mark_blocked(apps, schema_editor):
    """Requests filed before the flag: blocked when some stored check result did not pass."""
    PromotionRequest = apps.get_model("promotions", "PromotionRequest")
    blocked = [
        pk
        for pk, results in PromotionRequest.objects.values_list("pk", "check_results").iterator()
        if any(not result.get("passed") for result in results or ())
    ]
    for start in range(0, len(blocked), 500):
        PromotionRequest.objects.filter(pk__in=blocked[start : start + 500]).update(checks_blocked=True)


class Migration(migrations.Migration):
    dependencies = [
        ("promotions", "0012_last_error_detail"),
    ]

    operations = [
        migrations.AddField(
            model_name="promotionrequest",
            name="checks_blocked",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(mark_blocked, migrations.RunPython.noop),
    ]
