package tickplant.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

/** The list Apicurio's config-index build extension would generate: none are changed at run time here. */
@ApplicationScoped
public class NoDynamicConfig {
    @Produces
    @ApplicationScoped
    public DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}
